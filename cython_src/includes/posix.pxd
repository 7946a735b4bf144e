# Declarations of the POSIX calls the segment needs (mmap and friends).
from libc.stddef cimport size_t

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    void *MAP_FAILED
    int PROT_READ
    int PROT_WRITE
    int MAP_SHARED

cdef extern from "<errno.h>" nogil:
    int errno
    int EOWNERDEAD
    int ENOTRECOVERABLE
    int EBUSY
    int ESRCH
    int ETIMEDOUT

cdef extern from "<signal.h>" nogil:
    int kill(int pid, int sig)

cdef extern from "<sched.h>" nogil:
    int sched_yield()
