"""An OA-side Django hook for editflow: publish on approval, act on the completion.

``core`` is the logic (no Django); ``django_app`` wires it to models and signals.
"""
