"""`ioussl report`, `export`: grouping, statistics, tables, plots, the HTML report, exports."""
