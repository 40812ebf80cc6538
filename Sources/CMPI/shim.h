#ifndef TORUS_CMPI_SHIM_H
#define TORUS_CMPI_SHIM_H
#include <mpi.h>

/* Open MPI's predefined handles are macros that cast addresses of global objects; Swift cannot
   import them, so each one gets a static inline getter here. */
static inline MPI_Comm torus_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm torus_mpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype torus_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype torus_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype torus_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype torus_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Op torus_mpi_op_sum(void) { return MPI_SUM; }
static inline MPI_Op torus_mpi_op_max(void) { return MPI_MAX; }
static inline MPI_Op torus_mpi_op_min(void) { return MPI_MIN; }
static inline MPI_Request torus_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Errhandler torus_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Status *torus_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Status *torus_mpi_statuses_ignore(void) { return MPI_STATUSES_IGNORE; }
static inline int torus_mpi_any_source(void) { return MPI_ANY_SOURCE; }
static inline int torus_mpi_any_tag(void) { return MPI_ANY_TAG; }
static inline int torus_mpi_undefined(void) { return MPI_UNDEFINED; }
static inline int torus_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline void *torus_mpi_in_place(void) { return MPI_IN_PLACE; }
/* The largest tag the communicator accepts (MPI_TAG_UB; at least 32767 by the standard). */
static inline int torus_mpi_tag_upper_bound(MPI_Comm comm) {
    int *value = 0, found = 0;
    if (MPI_Comm_get_attr(comm, MPI_TAG_UB, &value, &found) != MPI_SUCCESS || !found || !value) return 32767;
    return *value;
}
#endif
