// Stub of tensorflow/lite/core/c/common.h: the TfLiteTensor fields main.cc reads.
#ifndef TENSORFLOW_LITE_CORE_C_COMMON_H_
#define TENSORFLOW_LITE_CORE_C_COMMON_H_

#include <cstddef>
#include <cstdint>

typedef enum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;

typedef enum { kTfLiteNoType = 0, kTfLiteFloat32 = 1, kTfLiteInt16 = 7, kTfLiteInt8 = 9 } TfLiteType;

typedef union TfLitePtrUnion {
  int32_t* i32;
  float* f;
  int16_t* i16;
  int8_t* int8;
  uint8_t* uint8;
  void* data;
} TfLitePtrUnion;

typedef struct TfLiteQuantizationParams {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;

typedef struct TfLiteTensor {
  TfLiteType type;
  TfLitePtrUnion data;
  TfLiteQuantizationParams params;
  size_t bytes;
} TfLiteTensor;

#endif  // TENSORFLOW_LITE_CORE_C_COMMON_H_
