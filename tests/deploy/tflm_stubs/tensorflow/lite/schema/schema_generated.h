// Stub of tensorflow/lite/schema/schema_generated.h: the model accessors main.cc uses.
#ifndef TENSORFLOW_LITE_SCHEMA_SCHEMA_GENERATED_H_
#define TENSORFLOW_LITE_SCHEMA_SCHEMA_GENERATED_H_

#include <cstdint>

#define TFLITE_SCHEMA_VERSION (3)

namespace tflite {

struct Model {
  uint32_t version() const;
};

const Model* GetModel(const void* buf);

}  // namespace tflite

#endif  // TENSORFLOW_LITE_SCHEMA_SCHEMA_GENERATED_H_
