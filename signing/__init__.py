"""mantra.signing: product keys and signed, measured images.

- encoding: the canonical binary encoding of the key record, revocation
  list, manifest and envelope (docs/signing.md has the byte layouts);
- keys: key sets (offline root key, image-signing keys, revocation list),
  private keys encrypted at rest;
- image: where the signed manifest lives in a disk image and which ESP files
  are components;
- sign / verify: `mantra sign` and `mantra verify`;
- pcr: the PCR 8/9 values MantraBoot's measurements produce, for attestation;
- tpm2: TPM 2.0 structures (TPM2B_PUBLIC, TPM2B_ATTEST, TPMT_SIGNATURE), the
  attestation key template, a TPM command client;
- eventlog: the crypto-agile TCG event log, parsed strictly and replayed;
- attest: `mantra attest`: the device's answer, AK pinning, quote checks.
"""
