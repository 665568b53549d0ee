"""HTTP dialects: each parses its wire shape into a GenerationRequest and renders events back."""
