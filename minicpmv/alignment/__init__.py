"""Alignment: RLAIF-V (sampled responses, divide-and-conquer AI feedback, preference pairs) whose
pairs train with the `dpo` recipe of `minicpmv.training`. The rules follow the RLAIF-V spec
(claims split into bullets, yes/no verification per claim, score = -rejected claims, pairs with
a score gap of at least 1, length balancing)."""
