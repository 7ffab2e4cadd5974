"""Best-model reports: the test split scored once, with bootstrap CIs, figures, HTML and Markdown.

Modules: ``bootstrap`` (CIs from confusion counts), ``contents`` (what a report holds), ``facts``
(reading the study, its runs and its ensemble), ``scoring`` (the one test scoring run), ``figures`` and
``plots`` (drawing), ``figure_set`` (the report's figures), ``render`` (HTML/Markdown, the output
folder) and ``build`` (the whole report behind ``galaxy10 report``).
"""
