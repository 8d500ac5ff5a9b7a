// A failed system call as the addon hands it to TypeScript: {errno, call, message}, which
// src/native.ts recognises and the callers turn into typed errors.

#pragma once

#include <napi.h>
#include <cstring>

inline Napi::Value SysError(Napi::Env env, const char* call, int err) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("errno", Napi::Number::New(env, err));
  o.Set("call", Napi::String::New(env, call));
  o.Set("message", Napi::String::New(env, std::strerror(err)));
  return o;
}
