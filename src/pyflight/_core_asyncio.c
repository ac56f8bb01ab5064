/* pyflight._core: asyncio support (being written). */
#include "_core.h"

int pyfl_asyncio_init(PyObject *mod) { return 0; }
