/* pyflight._core: lock support (being written). */
#include "_core.h"

int pyfl_lock_init(PyObject *mod) { return 0; }
