"""mantra.provision: flashing and provisioning boards over serial or USB
(MantraBoot's flash mode). Empty until the provisioning issue lands."""
