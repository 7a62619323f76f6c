"""mantra.signing: product keys and signed, measured images.

- encoding: the canonical binary encoding of the key record, revocation
  list, manifest and envelope (docs/signing.md has the byte layouts);
- keys: key sets (offline root key, image-signing keys, revocation list),
  private keys encrypted at rest;
- image: where the signed manifest lives in a disk image and which ESP files
  are components;
- sign / verify: `mantra sign` and `mantra verify`;
- pcr: the PCR 8/9 values MantraBoot's measurements produce, for attestation.
"""
