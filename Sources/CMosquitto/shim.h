#ifndef TIBET_TWIN_CMOSQUITTO_SHIM_H
#define TIBET_TWIN_CMOSQUITTO_SHIM_H

// The only door to libmosquitto (Debian libmosquitto-dev 2.0.x). Only the MQTT target imports
// this module. What Swift cannot import (macros) is re-exported as static inline functions
// with a CMosquitto_ prefix.

#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <errno.h>

static inline int CMosquitto_PROTOCOL_V311(void) { return MQTT_PROTOCOL_V311; }
static inline int CMosquitto_PROTOCOL_V5(void) { return MQTT_PROTOCOL_V5; }
static inline int CMosquitto_LOG_ERR(void) { return MOSQ_LOG_ERR; }
static inline int CMosquitto_LOG_WARNING(void) { return MOSQ_LOG_WARNING; }
// Bit 0 of the CONNACK flags: the broker kept a session for this client id.
static inline int CMosquitto_SESSION_PRESENT(void) { return 1; }

#endif
