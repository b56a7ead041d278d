// Stub of tensorflow/lite/micro/micro_log.h.
#ifndef TENSORFLOW_LITE_MICRO_MICRO_LOG_H_
#define TENSORFLOW_LITE_MICRO_MICRO_LOG_H_

void MicroPrintf(const char* format, ...);

#endif  // TENSORFLOW_LITE_MICRO_MICRO_LOG_H_
