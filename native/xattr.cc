// Reading a file's extended attributes without following symlinks (llistxattr, lgetxattr): the
// commit of a container's writable layer keeps its xattrs, and overlayfs marks opaque
// directories with one. Synchronous on purpose: the commit reads them while the container is
// frozen, where a thread-pool round trip per file would cost more than the call.

#include <napi.h>
#include "sys_error.h"
#include <sys/xattr.h>
#include <cerrno>
#include <string>
#include <vector>

namespace {

// readXattrs(path): {name: Buffer}, or an error object.
Napi::Value ReadXattrs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "readXattrs(path: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>();
  std::vector<char> names(1024);
  ssize_t n;
  // The list can grow between the calls: ERANGE means ask again with a bigger buffer.
  while ((n = llistxattr(path.c_str(), names.data(), names.size())) < 0) {
    if (errno != ERANGE) return SysError(env, "llistxattr", errno);
    ssize_t want = llistxattr(path.c_str(), nullptr, 0);
    if (want < 0) return SysError(env, "llistxattr", errno);
    names.resize(static_cast<size_t>(want) + 256);
  }
  Napi::Object out = Napi::Object::New(env);
  std::vector<char> value(4096);
  for (ssize_t off = 0; off < n;) {
    std::string name(names.data() + off);
    off += static_cast<ssize_t>(name.size()) + 1;
    ssize_t len;
    while ((len = lgetxattr(path.c_str(), name.c_str(), value.data(), value.size())) < 0) {
      if (errno == ENODATA) break;  // removed since the listing
      if (errno != ERANGE) return SysError(env, "lgetxattr", errno);
      ssize_t want = lgetxattr(path.c_str(), name.c_str(), nullptr, 0);
      if (want < 0) return SysError(env, "lgetxattr", errno);
      value.resize(static_cast<size_t>(want) + 256);
    }
    if (len >= 0) out.Set(name, Napi::Buffer<char>::Copy(env, value.data(), static_cast<size_t>(len)));
  }
  return out;
}

}  // namespace

Napi::Object InitXattr(Napi::Env env, Napi::Object exports) {
  exports.Set("readXattrs", Napi::Function::New(env, ReadXattrs));
  return exports;
}
