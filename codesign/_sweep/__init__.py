"""Sweeps over compression settings and machines (`dopant.codesign.sweep`): the spec, its
points, running them (in this process or on Ray), the table, its Pareto fronts and the report.
The modules, in the order a sweep uses them: spec, space, store, point, run, pareto, result,
plots, report; `columns` defines the table."""
