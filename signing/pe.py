"""The Authenticode hash of a PE/COFF image: what UEFI firmware measures
into PCR 4 for a boot application (EV_EFI_BOOT_SERVICES_APPLICATION; TCG
PC Client Platform Firmware Profile; "Windows Authenticode Portable
Executable Signature Format", as EDK2's Tcg2MeasurePeImage computes it):

1. the headers up to the optional header's CheckSum, then from after the
   CheckSum up to the Certificate Table data directory entry, then from
   after that entry to SizeOfHeaders (the CheckSum and the entry skipped);
2. each section with raw data, in ascending PointerToRawData order;
3. whatever the file holds after the last section, but the certificate
   table (the Authenticode signature itself).
"""

from __future__ import annotations

import hashlib
import struct

from mantra.signing.encoding import DecodeError

_PE32 = 0x10B
_PE32_PLUS = 0x20B
_CERTIFICATE_DIRECTORY = 4


def authenticode_hash(image: bytes, algorithm: str = "sha256") -> bytes:
    """The Authenticode digest of the PE image `image` (DecodeError if it is
    not a well-formed PE/COFF file)."""
    def fail(message: str) -> DecodeError:
        return DecodeError(f"PE image: {message}")

    if len(image) < 0x40 or image[:2] != b"MZ":
        raise fail("no MZ header")
    pe = struct.unpack_from("<I", image, 0x3C)[0]
    if pe + 24 > len(image) or image[pe : pe + 4] != b"PE\0\0":
        raise fail("no PE signature at e_lfanew")
    sections, optional_size = struct.unpack_from("<2xH12xH", image, pe + 4)
    optional = pe + 24
    if optional + optional_size > len(image) or optional_size < 2:
        raise fail("optional header runs past the file")
    magic = struct.unpack_from("<H", image, optional)[0]
    if magic == _PE32:
        directories_at, count_at = optional + 96, optional + 92
    elif magic == _PE32_PLUS:
        directories_at, count_at = optional + 112, optional + 108
    else:
        raise fail(f"optional header magic {magic:#x} is neither PE32 nor PE32+")
    if count_at + 4 > optional + optional_size:
        raise fail("optional header too short")
    checksum_at = optional + 64
    headers_size = struct.unpack_from("<I", image, optional + 60)[0]
    directories = struct.unpack_from("<I", image, count_at)[0]
    if headers_size > len(image) or headers_size < optional + optional_size:
        raise fail(f"SizeOfHeaders {headers_size} does not fit the file")
    cert_offset = cert_size = 0
    digest = hashlib.new(algorithm)
    digest.update(image[:checksum_at])
    if directories > _CERTIFICATE_DIRECTORY:
        entry = directories_at + 8 * _CERTIFICATE_DIRECTORY
        if entry + 8 > optional + optional_size:
            raise fail("data directories run past the optional header")
        cert_offset, cert_size = struct.unpack_from("<II", image, entry)
        digest.update(image[checksum_at + 4 : entry])
        digest.update(image[entry + 8 : headers_size])
    else:
        digest.update(image[checksum_at + 4 : headers_size])
    table = optional + optional_size
    if table + 40 * sections > len(image):
        raise fail("section table runs past the file")
    raw = []
    for index in range(sections):
        size, pointer = struct.unpack_from("<II", image, table + 40 * index + 16)
        if size:
            if pointer + size > len(image):
                raise fail(f"section {index} runs past the file")
            raw.append((pointer, size))
    hashed = headers_size
    for pointer, size in sorted(raw):
        digest.update(image[pointer : pointer + size])
        hashed += size
    end = len(image) - cert_size if cert_size and cert_offset + cert_size == len(image) else len(image)
    if end > hashed:
        digest.update(image[hashed:end])
    return digest.digest()
