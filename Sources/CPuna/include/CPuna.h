// Umbrella header of the C core.
#include "puna_platform.h"
#include "puna_quants.h"
#include "puna_kernels.h"
#include "puna_lora.h"
#include "puna_net.h"
#include "puna_bnb.h"
