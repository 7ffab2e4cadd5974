"""The small core below every other package: one-line errors (``errors``), atomic files and temp names
(``files``), YAML reading (``yaml_io``), where things live by default (``paths``) and the output-folder policy
(``outputs``). Imports no other platform package."""
