"""The study: a grid of variants trained, scored and timed on Ray Tune (sweep), its results table
(results) and the report that compares them (report). ``grid`` turns a preset group, a list of names or
a file of axes into trials."""
