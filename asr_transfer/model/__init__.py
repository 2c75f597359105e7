"""The model: loading and saving, the record, the CTC head swap, parameter groups, the split forward pass,
adapters, and the source-to-target transfer setup."""
