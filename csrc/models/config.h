/* A model config struct described field by field, so that a config arriving by name (a dict from Python, a JSON
 * object) fills it through one generic reader instead of per-field code. Each model keeps its table next to its
 * struct; the keys are the struct's field names, which are diffusers' / transformers' config keys wherever they
 * have one. */
#ifndef CVX_CONFIG_H
#define CVX_CONFIG_H

#include <stddef.h>

typedef enum cvx_config_type {
    CVX_CONFIG_INT,      /* int: an exact integer that fits a C int */
    CVX_CONFIG_BOOL,     /* int 0 / 1: true or false only */
    CVX_CONFIG_FLOAT,    /* float: a finite number within float32's range */
    CVX_CONFIG_STRING,   /* const char *: borrowed from the caller for the duration of the call that reads it */
    CVX_CONFIG_INT_LIST, /* int[capacity]: 1 to capacity exact C ints, their count stored at count_offset */
} cvx_config_type;

typedef struct cvx_config_field {
    const char *key; /* NULL ends a table */
    cvx_config_type type;
    size_t offset;       /* of the value in the struct */
    int required;        /* 0: may be absent, leaving the value zero (the feature it describes is absent) */
    size_t count_offset; /* INT_LIST: of the int that receives the count */
    int capacity;        /* INT_LIST: most entries */
} cvx_config_field;

#endif
