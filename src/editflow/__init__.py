"""editflow: OA-approved image edits as Kubernetes GPU Jobs.

The distribution maps the repository's component folders into this one
namespace (``events/`` -> ``editflow.events``, ``operator/`` ->
``editflow.operator``, ...). Importing a component never drags in another:
``editflow.core`` is the only module every component may use.
"""

__version__ = "0.1.0"
