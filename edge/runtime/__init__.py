"""The embeddable adaptive runtime: the classifier, its variants, the scheduler, the selector, the slowdown filter."""
