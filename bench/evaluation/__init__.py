"""Evaluation: one suite for every method. The metric registry (:mod:`.metrics`, where a new metric
goes), the evaluation context that computes shared work once (:mod:`.evaluate`), the certified
exact neighbour search (:mod:`.exact_search`), the retrieval and k-NN metrics on it
(:mod:`.neighbors`) and the linear-SVM probe (:mod:`.probe`)."""
