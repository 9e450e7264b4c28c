"""The real-milter interop suite (a package so its rig is torn down when its tests are done)."""
