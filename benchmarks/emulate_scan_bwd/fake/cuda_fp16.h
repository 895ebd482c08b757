#pragma once
// CPU stand-in (benchmarks/emulate_scan_bwd): the conversions the kernels use.
struct __half { _Float16 v; };
inline float __half2float(__half h) { return float(h.v); }
inline __half __float2half(float f) { return __half{_Float16(f)}; }
