// Reading a file's extended attributes without following symlinks (llistxattr, lgetxattr): an
// unpacked layer's overlay markers (trusted.overlay.opaque), capabilities and ACLs go into its
// EROFS image. Node's fs has no binding for them.

#include <napi.h>
#include "sys_error.h"
#include <sys/xattr.h>
#include <cerrno>
#include <string>
#include <vector>

namespace {

// readXattrs(path): {name: Buffer}, or an error object. ENOTSUP (no xattrs on this filesystem) is {}.
Napi::Value ReadXattrs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "readXattrs(path)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>();
  Napi::Object out = Napi::Object::New(env);
  std::vector<char> names;
  for (;;) {
    ssize_t n = llistxattr(path.c_str(), nullptr, 0);
    if (n < 0) return errno == ENOTSUP ? Napi::Value(out) : SysError(env, "llistxattr", errno);
    if (n == 0) return out;
    names.resize(static_cast<size_t>(n));
    n = llistxattr(path.c_str(), names.data(), names.size());
    if (n >= 0) {
      names.resize(static_cast<size_t>(n));
      break;
    }
    if (errno != ERANGE) return SysError(env, "llistxattr", errno);  // ERANGE: it grew meanwhile
  }
  std::vector<char> value;
  for (size_t at = 0; at < names.size();) {
    const char* name = names.data() + at;
    at += std::char_traits<char>::length(name) + 1;
    for (;;) {
      ssize_t n = lgetxattr(path.c_str(), name, nullptr, 0);
      if (n < 0) {
        if (errno == ENODATA) break;  // removed meanwhile
        return SysError(env, "lgetxattr", errno);
      }
      value.resize(static_cast<size_t>(n));
      n = lgetxattr(path.c_str(), name, value.data(), value.size());
      if (n >= 0) {
        out.Set(name, Napi::Buffer<char>::Copy(env, value.data(), static_cast<size_t>(n)));
        break;
      }
      if (errno != ERANGE) return SysError(env, "lgetxattr", errno);
    }
  }
  return out;
}

}  // namespace

Napi::Object InitXattrs(Napi::Env env, Napi::Object exports) {
  exports.Set("readXattrs", Napi::Function::New(env, ReadXattrs));
  return exports;
}
