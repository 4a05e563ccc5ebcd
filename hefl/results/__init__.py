"""What a run folder's logs become: summary.json and summary.csv (summary, timeline, traffic,
table), the plots, comparisons and reports. Never imports hefl.node or hefl.control."""
