/* The float half of the C kernels, with the 16-bit entry points (FL_PART, fastloss.c). */
#define FL_PART 32
#include "fastloss.c"
