"""Image writers: the boot filesystem (bootfs), the ESP (FAT, through
mtools) and the GPT disk image."""
