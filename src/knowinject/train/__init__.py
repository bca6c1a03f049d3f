"""Stage 2, the models and their training: loading any causal LM, examples as token rows, finetuning
(LoRA or full, one run or many over one base), the tiny model's pretraining and the two model tracks."""
