// nvemu stand-in for the CUB header of the same name.
#pragma once
#include "../../nvemu_cub.h"
