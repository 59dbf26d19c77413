/* The double half of the C kernels (FL_PART, fastloss.c). */
#define FL_PART 64
#include "fastloss.c"
