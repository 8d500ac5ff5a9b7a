// Opens "oci:DIR[:TAG]" as an OCI layout and anything else as a registry reference.

import type { RegistryClient } from '../registry/client.js';
import { OciLayout } from './oci-layout.js';
import { RegistryImage } from './registry-image.js';

export function openImage(spec: string, client: RegistryClient): OciLayout | RegistryImage {
  return spec.startsWith('oci:') ? new OciLayout(spec) : new RegistryImage(client, spec);
}
