"""Reference shapes shared by the fit tests: Mistral 7B, the text model of the recipe's LLaVA 1.6 Mistral 7B."""

MISTRAL_7B_CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "vocab_size": 32000,
}
MISTRAL_7B_PARAMS = 7_241_732_096
