"""Running a job: the plan (what is missing), its execution, input checks, run status.

May import every stage below it (results, spec, scoring, extract, pools, inputs, cluster, metrics).
"""
