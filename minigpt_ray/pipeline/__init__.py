"""The whole card as one job: pretrain → fine-tune → sweep → serve, each stage its own job's library call, then a
report (report.py: no Ray)."""
