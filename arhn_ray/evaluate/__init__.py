"""``arhn-ray evaluate``: the same retriever trained on the original rows, on the refined rows and
on a TopK-PercPos baseline's, scored on a BEIR-format set with paired bootstrap intervals."""
