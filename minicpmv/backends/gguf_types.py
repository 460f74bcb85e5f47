"""GGUF weight types of `export-gguf`, torch-free so that the CLI's parser can list them."""

# decoder linears in the chosen type; embeddings and head at 8 bits for the 4- and 8-bit types
# (as this package's own int4/int8 keep the head at 8 bits)
TYPES = {"q4_0": ("Q4_0", "Q8_0"), "q8_0": ("Q8_0", "Q8_0"), "f16": ("F16", "F16"), "f32": ("F32", "F32")}
