"""analysis layer: measuring what each block of a transformer does. Scores (linearity),
block surgery (surgery), linear stand-ins (standins), held-out data and validation loss
(calibration), the measured cost of removing each block (ablation), and `ditkit analyze`
as one call (report.analyze_model). See docs/analysis.md."""
