{
  "targets": [
    {
      "target_name": "dedup_native",
      "sources": ["addon.cc", "memory_merge.cc", "fuse_device.cc", "file_space.cc", "erofs_mount.cc", "xattrs.cc", "fanotify.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra"]
    },
    {
      "target_name": "dedup-sandbox-shim",
      "type": "executable",
      "sources": ["sandbox_shim.c"],
      "cflags": ["-Wall", "-Wextra"],
      "libraries": ["-lseccomp"]
    }
  ]
}
