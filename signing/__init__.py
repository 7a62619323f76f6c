"""mantra.signing: product keys and image signing (Ed25519 slot manifests for
MantraBoot's verified boot). Empty until the signing issue lands."""
