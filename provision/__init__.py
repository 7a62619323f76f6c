"""mantra.provision: flashing boards (MantraBoot's flash mode,
docs/flash-protocol.md).

- `frames`: the MantraFlash frame codec (encode_frame, FrameDecoder), shared
  with MantraBoot's tests;
- `messages`: one class per command, reply and device frame, strict decode;
- `bmap`: the block map of a slot's FAT volume (used blocks, hashes, digest);
- `serial_flash`: the host session over a serial line and `flash()`, what
  `mantra flash` runs;
- `bench`: `mantra flash --bench` (a QEMU board over its console socket).
"""
