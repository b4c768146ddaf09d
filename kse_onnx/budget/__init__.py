"""The measured latency budget (``--target-latency``, docs/budget.md): a per-layer latency
table (:mod:`.table`), what can be cut (:mod:`.units`), the allocation (:mod:`.allocate`),
the measured search (:mod:`.search`) and the timing builds (:mod:`.build`)."""
