// The tpm2-tss libraries the TPM target uses: ESYS (the enhanced system API),
// the TCTI loader (device, swtpm and other transports chosen by a string),
// response code decoding, and marshalling of TPM structures.
#ifndef BULKHEAD_CTSS2_H
#define BULKHEAD_CTSS2_H

#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_mu.h>

#endif
