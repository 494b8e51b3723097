"""Similar products: text/attribute features, image/text encoders, retrieval, evaluation."""
