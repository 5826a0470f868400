"""The compression sweep as a Ray Tune job: prepare (no Ray) → Tune trials → Pareto front (no Ray) → winner."""
