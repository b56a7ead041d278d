// Stub of tensorflow/lite/micro/micro_mutable_op_resolver.h: the Add methods of the builtin
// operators, copied by name from tflite-micro 90b983c (2026-08-20); registrations left out.
#ifndef TENSORFLOW_LITE_MICRO_MICRO_MUTABLE_OP_RESOLVER_H_
#define TENSORFLOW_LITE_MICRO_MICRO_MUTABLE_OP_RESOLVER_H_

#include "tensorflow/lite/core/c/common.h"
#include "tensorflow/lite/micro/micro_interpreter.h"

namespace tflite {

template <unsigned int tOpCount>
class MicroMutableOpResolver : public MicroOpResolver {
 public:
  TfLiteStatus AddAbs();
  TfLiteStatus AddAdd();
  TfLiteStatus AddAddN();
  TfLiteStatus AddArgMax();
  TfLiteStatus AddArgMin();
  TfLiteStatus AddAssignVariable();
  TfLiteStatus AddAveragePool2D();
  TfLiteStatus AddBatchMatMul();
  TfLiteStatus AddBatchToSpaceNd();
  TfLiteStatus AddBroadcastArgs();
  TfLiteStatus AddBroadcastTo();
  TfLiteStatus AddCallOnce();
  TfLiteStatus AddCast();
  TfLiteStatus AddCeil();
  TfLiteStatus AddConcatenation();
  TfLiteStatus AddConv2D();
  TfLiteStatus AddCos();
  TfLiteStatus AddCumSum();
  TfLiteStatus AddDepthToSpace();
  TfLiteStatus AddDepthwiseConv2D();
  TfLiteStatus AddDequantize();
  TfLiteStatus AddDiv();
  TfLiteStatus AddDynamicUpdateSlice();
  TfLiteStatus AddEmbeddingLookup();
  TfLiteStatus AddElu();
  TfLiteStatus AddEqual();
  TfLiteStatus AddExp();
  TfLiteStatus AddExpandDims();
  TfLiteStatus AddFill();
  TfLiteStatus AddFloor();
  TfLiteStatus AddFloorDiv();
  TfLiteStatus AddFloorMod();
  TfLiteStatus AddFullyConnected();
  TfLiteStatus AddGather();
  TfLiteStatus AddGatherNd();
  TfLiteStatus AddGreater();
  TfLiteStatus AddGreaterEqual();
  TfLiteStatus AddHardSwish();
  TfLiteStatus AddIf();
  TfLiteStatus AddL2Normalization();
  TfLiteStatus AddL2Pool2D();
  TfLiteStatus AddLeakyRelu();
  TfLiteStatus AddLess();
  TfLiteStatus AddLessEqual();
  TfLiteStatus AddLog();
  TfLiteStatus AddLogicalAnd();
  TfLiteStatus AddLogicalNot();
  TfLiteStatus AddLogicalOr();
  TfLiteStatus AddLogistic();
  TfLiteStatus AddLogSoftmax();
  TfLiteStatus AddMaximum();
  TfLiteStatus AddMaxPool2D();
  TfLiteStatus AddMirrorPad();
  TfLiteStatus AddMean();
  TfLiteStatus AddMinimum();
  TfLiteStatus AddMul();
  TfLiteStatus AddNeg();
  TfLiteStatus AddNotEqual();
  TfLiteStatus AddPack();
  TfLiteStatus AddPad();
  TfLiteStatus AddPadV2();
  TfLiteStatus AddPrelu();
  TfLiteStatus AddQuantize();
  TfLiteStatus AddReadVariable();
  TfLiteStatus AddReduceAll();
  TfLiteStatus AddReduceMax();
  TfLiteStatus AddReduceMin();
  TfLiteStatus AddRelu();
  TfLiteStatus AddRelu6();
  TfLiteStatus AddReshape();
  TfLiteStatus AddResizeBilinear();
  TfLiteStatus AddResizeNearestNeighbor();
  TfLiteStatus AddReverseV2();
  TfLiteStatus AddRound();
  TfLiteStatus AddRsqrt();
  TfLiteStatus AddSelectV2();
  TfLiteStatus AddShape();
  TfLiteStatus AddSin();
  TfLiteStatus AddSlice();
  TfLiteStatus AddSoftmax();
  TfLiteStatus AddSpaceToBatchNd();
  TfLiteStatus AddSpaceToDepth();
  TfLiteStatus AddSplit();
  TfLiteStatus AddSplitV();
  TfLiteStatus AddSqueeze();
  TfLiteStatus AddSqrt();
  TfLiteStatus AddSquare();
  TfLiteStatus AddSquaredDifference();
  TfLiteStatus AddStridedSlice();
  TfLiteStatus AddSub();
  TfLiteStatus AddSum();
  TfLiteStatus AddSvdf();
  TfLiteStatus AddTanh();
  TfLiteStatus AddTransposeConv();
  TfLiteStatus AddTranspose();
  TfLiteStatus AddUnpack();
  TfLiteStatus AddUnidirectionalSequenceLSTM();
  TfLiteStatus AddVarHandle();
  TfLiteStatus AddWhile();
  TfLiteStatus AddZerosLike();
};

}  // namespace tflite

#endif  // TENSORFLOW_LITE_MICRO_MICRO_MUTABLE_OP_RESOLVER_H_
