"""Hugging Face transformers: where heads and MLP neurons live (:mod:`.layouts`), removing heads (:mod:`.heads`),
neurons (:mod:`.neurons`) and blocks (:mod:`.blocks`), and keeping the config true (:mod:`.config`)."""
